"""Fusion by distillation. Knowledge propagation by context distillation (Padmanabhan et al., NeurIPS 2023, arXiv
2306.09306): entities and their probes (Entity Inferences format), probe scoring, transfer sets, the distillation
loss and loop with its fine-tuning baseline, and runs that report every method side by side. And ensemble
distillation (:mod:`fusionkit.distill.ensemble`): a zoo's experts into one student on unlabeled text. And models
whose vocabularies differ, which no weight-space merge can combine: token alignment
(:mod:`fusionkit.distill.token_alignment`) and training-free Cool-Fusion (:mod:`fusionkit.distill.cool_fusion`).

``from fusionkit import distill as D`` gives the whole workflow: ``D.settings``, ``D.transfer_set``,
``D.prepare``, ``D.distill``, ``D.run``, ``D.multi_entity_curve``, ``D.format_table``.
"""
from .config import CALLBACK_KEYS, METHODS, SETTINGS, DistillConfig, settings
from .entities import Entity, Probe, load_entities, load_facts, read_entities
from .probes import chance, score_probes
from .runs import format_table, multi_entity_curve, probe_rows, results_from, run
from .training import (Target, distill, finetune_definition, kl_drop, kl_loss, make_target, position_kl, prepare,
                       select_params, target_kl)
from .transfer import quality as transfer_quality
from .transfer import transfer_set

__all__ = ["CALLBACK_KEYS", "METHODS", "SETTINGS", "DistillConfig", "settings", "Entity", "Probe", "load_entities",
           "load_facts", "read_entities", "chance", "score_probes", "format_table", "multi_entity_curve", "probe_rows",
           "results_from", "run", "Target", "distill", "finetune_definition", "kl_drop", "kl_loss", "make_target",
           "position_kl", "prepare", "select_params", "target_kl", "transfer_quality", "transfer_set"]
