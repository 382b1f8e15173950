from pegx.cli import main

main()
