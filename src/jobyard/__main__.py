from jobyard.cli import main

main()
