"""A running world: ``World`` (networks loaded once) and ``Session`` (one streaming rollout)."""
