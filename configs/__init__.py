"""ml-collections config files (`get_config(arg=None)`)."""
