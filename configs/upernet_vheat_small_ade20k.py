"""UperNet-vHeat-Small on ADE20K, 160k iterations at 512 x 512: the official recipe.

    python seg_train.py --config configs/upernet_vheat_small_ade20k.py --workdir /ckpt/upernet_vheat_small \
        --config.data_dir=/data/ADEChallengeData2016 --config.init_from=/ckpt/vHeat_small.pth

Official file: segmentation/configs/vheat/upernet_vheat_160k_ade20k_512x512_small.py (MzeroMiko/vHeat);
everything else is the default of vheat_jax.seg.config (see docs/segmentation.md).
"""

from vheat_jax.seg.config import default_config


def get_config():
    config = default_config()
    config.model.name = "vheat_small"
    config.model.drop_path_rate = 0.4
    return config
