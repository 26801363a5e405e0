from ldm_lightning.cli import main

main()
