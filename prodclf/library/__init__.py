"""The commodity library: its tables, owned by ``prodclf.library.table.CommodityLibrary``."""
