"""MMBM: one shared attention backbone that captions images, matches text to
images and transcribes speech.

The package is a library first: nothing in it imports gradio (only app.py does)
or training-only packages (only mmbm.train does).
"""

__version__ = "0.1.0"
