from pearzoo.cli import main

main()
