"""Pre-train MA-CLIP's LoRA pool: python scripts/pretrain_maclip.py --cfg NAME --clip FILE --out DIR."""

from rsfusion.cli.pretrain_maclip import main

if __name__ == "__main__":
    raise SystemExit(main())
