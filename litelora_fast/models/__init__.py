"""Whole models: what works on a model of many adapted layers.

Injection and the PEFT config reader (``inject``, ``peft_config``), the PEFT bridge
(``peft_bridge``) and the patch of PEFT's own layers (``peft_patch``, ``peft_patch_layers``,
``peft_routing``), HF checkpoints and the Trainer callbacks (``hf_checkpoints``), adapter files
and their checks (``adapter_files``, ``adapter_file_checks``), distributed tensors
(``dist_tensors``), model-level adapter management (``model_adapters``, ``model_utils``), merging
(``merge``) and multi-tenant routing (``routing``). Imports reach down only: ``module``, ``op``,
the kernels and ``settings``.
"""
