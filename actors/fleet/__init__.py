"""The fleet: names and worker locks shared by daemons on many hosts through Redis (contract §7)."""
