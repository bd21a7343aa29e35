from sam_edit.cli.app import main

main()
