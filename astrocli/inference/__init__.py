"""Using a trained model: the runner (:mod:`.runner`: ``load_runner`` for ``.safetensors`` or
``.onnx``), ``astro predict`` (:mod:`.predict`), ``astro eval`` (:mod:`.evaluate`), calibrating a
checkpoint and ``astro export`` (:mod:`.export`). The runner and predict are torch-free at import.
"""
