from ml.cli import main

main()
