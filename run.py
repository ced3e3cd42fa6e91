"""Entry point: ``python run.py method=sds_lora model=llama3_8b rank=32`` (see conf/config.yaml)."""
import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from loralab.errors import LoralabError
from loralab.runner import run

log = logging.getLogger("loralab")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except LoralabError as err:
        log.error("%s: %s", type(err).__name__, err)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return  # one failed cell must not stop the other cells of a sweep
        sys.exit(2)


if __name__ == "__main__":
    main()
