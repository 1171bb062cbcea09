"""Operations tooling: the team stack and the dvc.yaml generator."""
