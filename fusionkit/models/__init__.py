"""The models layer: experts (fine-tuned models on disk) and how they are trained, zoos of experts, the head
policy, and scoring - the evaluator (one live model, tokenised data) and the one scorer used by evaluation,
search and landscapes."""
