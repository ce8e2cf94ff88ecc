def module_getattr(module: str):
    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise NotImplementedError(f"{module}.{name}: torchvision is not installed (slidecell's stand-in)")

        return unavailable

    return __getattr__
