from isic2020.cli import main

main()
