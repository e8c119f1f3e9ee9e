"""The console scripts of ovt_explain (setup.cfg `console_scripts`): each runs its module as `python -m` does."""

from common.cli import module_command

make_synthetic_logs = module_command("ovt_explain.make_synthetic_logs")
bert_pretraining = module_command("ovt_explain.bert_pretraining")
bert_cls = module_command("ovt_explain.bert_cls")
attention_visualization = module_command("ovt_explain.attention_visualization")
convert_to_sentence = module_command("ovt_explain.convert_to_sentence")
generate_vocab = module_command("ovt_explain.generate_vocab")
classify_training_data = module_command("ovt_explain.classify_training_data")
