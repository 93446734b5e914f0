"""Domain actors: name pool, agent pool, worker identity locks, the tree and its daemon."""
