"""Training the embedded shapes GLaMM: in-memory samples, GLaMM's losses, the loop.

Entry point: ``scripts/train_shapes.py``; the trained model is loaded with
:func:`altp.models.glamm_build.build_glamm_shapes`.
"""
