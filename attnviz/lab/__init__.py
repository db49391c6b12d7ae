"""The lab: attnviz's own small attention models (Build your own), their tasks and training, and
the Mechanics lab's measurements.

- custom.py: the sequence-to-sequence toy model, saving and loading every lab model;
- toy_tasks.py: copy, reverse, sort, histogram (seeded digit sequences);
- train.py: the CPU training loop;
- qkv.py: queries, keys and values of a real model, for the Mechanics lab;
- cost.py: time and memory of attention as n grows.

Lab models are loaded by :func:`attnviz.load_model` like any folder (config.json marked
``"attnviz_custom": true``, registered with the loader below) and reach an AttentionResult
through :func:`attnviz.capture`, which runs them under the attention recorder.
"""
from attnviz.lab import custom
from attnviz.models import loader

loader.FOLDER_FORMATS["attnviz_custom"] = custom.load
