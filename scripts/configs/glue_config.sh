# The reference keeps its configs here; ours live in configs/.
source "$(dirname "${BASH_SOURCE[0]}")/../../configs/glue_config.sh"
