"""Image files, torch-free: readers (8-bit through Pillow, FITS / TIFF / 16-bit PNG / npy as float
arrays), float-array helpers and intensity scaling. ONNX ``astro predict`` runs on these alone.
"""
