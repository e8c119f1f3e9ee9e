"""The console scripts of bert4rec (setup.cfg `console_scripts`): each runs its module as `python -m` does."""

from common.cli import module_command

gen_data_fin = module_command("bert4rec.gen_data_fin")
run = module_command("bert4rec.run")
recommend = module_command("bert4rec.recommend")
