"""What a command runs end to end: the k-fold experiment, explaining a run again, reproducing a report's
fold, and self-supervised pretraining. They orchestrate train, deploy, explain and report; nothing below
imports them."""
