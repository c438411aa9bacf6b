from reproq_cli.cli import main

main()
