"""Stand-in for ComfyUI's ``folder_paths`` (the parts node packs use).

``configure(base)`` points it at a fresh ComfyUI-like tree (models/, input/,
output/), as ComfyUI's own module does for its install folder.
"""

import os

base_path = ""
models_dir = ""
folder_names_and_paths: dict = {}
_input_directory = ""
_output_directory = ""


def configure(base: str) -> None:
    global base_path, models_dir, _input_directory, _output_directory
    base_path = str(base)
    models_dir = os.path.join(base_path, "models")
    _input_directory = os.path.join(base_path, "input")
    _output_directory = os.path.join(base_path, "output")
    folder_names_and_paths.clear()
    folder_names_and_paths["checkpoints"] = ([os.path.join(models_dir, "checkpoints")], {".safetensors"})
    for path in (models_dir, _input_directory, _output_directory):
        os.makedirs(path, exist_ok=True)


def map_legacy(folder_name: str) -> str:
    return folder_name


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    # Same behaviour as ComfyUI's.
    if folder_name in folder_names_and_paths:
        paths, _exts = folder_names_and_paths[folder_name]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name: str) -> list:
    return folder_names_and_paths[folder_name][0][:]


def get_input_directory() -> str:
    return _input_directory


def get_output_directory() -> str:
    return _output_directory


def get_annotated_filepath(name: str, default_dir=None) -> str:
    return os.path.join(default_dir or _input_directory, name)
