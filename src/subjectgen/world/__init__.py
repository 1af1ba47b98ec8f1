"""The built-in offline world: the rendered emoji scenes and the scripts that train the built-in models."""
