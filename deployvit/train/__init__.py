"""Training: data, augmentation recipes, subnet samplers (uniform, sandwich, multi-arch, FocusFormer),
the supernet and standalone training loops, checkpoints, evaluation and torchrun distribution.

Functions other parts of deployvit use (search, export):
`data.open_data`, `data.held_out_split`, `evaluate.evaluate_accuracy`, `checkpoint.load_supernet`,
`focus.load_sampler`.
"""
