"""The console scripts of danmaku (setup.cfg `console_scripts`): each runs its module as `python -m` does."""

from common.cli import module_command

create_pretraining_data = module_command("danmaku.create_pretraining_data")
run_pretraining = module_command("danmaku.run_pretraining")
serve = module_command("danmaku.serve")
danmaku_similarity = module_command("danmaku.danmaku_similarity")
