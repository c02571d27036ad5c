"""ShapesWorld and the other corpora MMBM trains and evaluates on.

``shapes`` samples and renders scenes and keeps their scene graphs; ``captions``
writes captions from a small grammar and checks any caption for truth against
a scene; ``corpus`` writes an image corpus to disk and reads it back; ``speech``
speaks captions and number phrases with offline TTS engines. This package never
imports the model, the trainer or gradio.
"""
