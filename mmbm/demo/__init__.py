"""What the demo shows and ships, apart from the Gradio page itself (app.py).

Owns the presentation helpers that need no web framework (``views``: table rows,
attention heatmaps, transcript highlights, markdown for index statistics, add
reports and the About tab) and the build of what the demo ships beside the
checkpoint (``gallery``: the default image index over held-out ShapesWorld
scenes, and the example scenes); ``python -m mmbm.demo.gallery`` builds them.

``views`` reaches the package only through ``mmbm.pipeline`` (and its re-exported
option and result types), as app.py does; ``gallery`` also reads a ShapesWorld
corpus. Nothing here imports gradio, training or evaluation.
"""
