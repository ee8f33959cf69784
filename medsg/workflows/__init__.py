"""What a command runs end to end: the k-fold experiment (its data side in ``prepare``), explaining a run
again, reproducing a report's fold, self-supervised pretraining, and a seed ensemble's report. They
orchestrate train, deploy, explain and report; nothing below imports them."""
