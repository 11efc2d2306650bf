"""The model registry: where models are found, what a model folder holds, and how bundles travel.

Modules, lowest first (each imports only those above it):

- ``files``: a model folder on disk (``config.json`` + ``model.safetensors``), strict configs,
  safetensors headers, model kinds and config versions;
- ``identity``: weights hashes, ``checksums.json``, and the one codec-identity check;
- ``hf``: ``hf://org/repo[@rev]`` references and the Hugging Face Hub cache;
- ``registry``: ``--model PATH | NAME | hf://...`` → a folder (bundled, user cache, Hub cache);
- ``bundle``: release bundles: verification, summaries, listing, atomic installs;
- ``release``: ``pyramid export`` and ``pyramid download``.

Loading a model lives with the model: ``pyramid_cli.codec.api.load_codec`` and
``pyramid_cli.lm.api.load_lm`` take any reference ``registry.locate_model`` accepts.
"""
