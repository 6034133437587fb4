"""What a user writes: ``@flow``, ``@task``, hooks, trigger rules, parameters and run names."""
