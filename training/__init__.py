"""headct-triage training package: synthetic studies, MoLRE models, training, evaluation, export."""
