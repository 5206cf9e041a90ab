# shellcheck shell=bash
# The reference's path for the presets: the definitions live in configs/pretrain_config.sh.
# shellcheck source=/dev/null  # (the file is checked on its own)
source "$(dirname "${BASH_SOURCE[0]}")/../../configs/pretrain_config.sh"
