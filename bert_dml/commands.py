"""The console scripts of bert_dml (setup.cfg `console_scripts`): each runs its module as `python -m` does."""

from common.cli import module_command

train_dml = module_command("bert_dml.train_dml")
train_cls = module_command("bert_dml.train_cls")
extract_features = module_command("bert_dml.extract_features")
extruct_bert_metrics = module_command("bert_dml.extruct_bert_metrics")
extruct_bert_classified = module_command("bert_dml.extruct_bert_classified")
extruct_bert_embed = module_command("bert_dml.extruct_bert_embed")
plot_features = module_command("bert_dml.plot_features")
cluster = module_command("bert_dml.cluster")
compare = module_command("bert_dml.compare")
