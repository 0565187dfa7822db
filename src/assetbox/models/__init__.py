"""The model store: files on disk, weight import and conversion, loaded-model cache."""
