"""The built-in data formats, one module each; every module registers its openers with
``facekd.data.sources.register_source`` and is imported on the registry's first lookup."""
