"""Runtimes of the exported on-device graphs (ONNX, ExecuTorch, LiteRT, Core ML): load a graph by file and run it
by tensor name (:mod:`edgetam_train.runtime.backends`). Below both ``predictor`` (which runs exported models) and
``export`` (which re-checks what it wrote); it imports nothing of the package but numpy and the optional toolchains.
"""
