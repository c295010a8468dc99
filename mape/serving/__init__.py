"""Layer 5, what the app serves (no gradio here): the one owner of the shared models (:mod:`.owner`), the presets
and scenarios the page offers, compact unlearned models (deltas), download files, the words the page uses for
results, the lessons and the figures. Imports the layers below; ``ui/`` and ``app.py`` sit on top."""
