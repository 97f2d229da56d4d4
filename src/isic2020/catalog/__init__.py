"""What the dataset is: the manifest, the metadata CSVs' schemas and tables, selections.

Pure knowledge of ISIC 2020 (file names, sizes, columns, image names, what a plausible download
looks like). It may read files through the store; it never touches the network.
"""
