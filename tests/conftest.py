"""Test-wide settings. The suite works on tiny tensors, where one intra-op thread is faster than several
(and immune to oversubscription when other processes share the cores)."""
import torch

torch.set_num_threads(1)
