"""What a later stage keeps of an earlier one (continual learning on PaSST): the previous stage's head carried
frozen and its test set evaluated before and after the stage, and the methods that protect it (EWC, SI, LwF,
replay).  Names shared with the config live here so that the config need not import the methods.
"""
RETAIN_METHODS = ("none", "ewc", "si", "lwf", "replay")
FISHER_FILE = "fisher.pt"  # beside a stage's model.pt (retain.record): EWC's Fisher at the kept weights
SI_FILE = "si.pt"  # beside a stage's model.pt (retain.record): SI's importance of the path to the kept weights
