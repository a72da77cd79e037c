"""``removalnet datasets``: list the registered datasets and whether their files are present."""
from __future__ import annotations

import argparse

NAME = "datasets"
HELP = "list the registered datasets (classes, channels, size) and where their files are expected"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from ..data import get_dataset_info, list_datasets  # lazy: keeps torch off the CLI's start
    print(f"{'name':<14} {'classes':>7} {'chans':>5} {'size':>4}  description / where")
    for n in list_datasets():
        i = get_dataset_info(n)
        print(f"{n:<14} {i.num_classes:>7} {i.in_chans:>5} {i.input_size:>4}  {i.description}")
        if getattr(i, "where", ""):
            print(f"{'':<35}{i.where}")
    return 0
