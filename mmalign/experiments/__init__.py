"""Research reproductions and evidence in the scene world: the papers' claims over seeds
(``dpo``, ``reward_models``, ``ppo``, ``report``), how the shipped scene VLM was made
(``pretrain_scene_vlm``), and speed / memory measurements against peers (``perf``).

Applications, not library: nothing else in mmalign imports them. Their modules keep heavy
imports inside functions so the CLI reads arms and defaults without loading torch.
"""
