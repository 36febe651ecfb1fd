"""Model configs: real sizes and tiny ones."""
