from kdsweep.cli import main

main()
