#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "ring.h"

static PyObject *abi_version(PyObject *self, PyObject *args) {
    return PyLong_FromLong(sl_ring_abi_version());
}

static PyMethodDef methods[] = {
    {"abi_version", abi_version, METH_NOARGS, "ABI version of the native ring core."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ring", NULL, -1, methods};

PyMODINIT_FUNC PyInit__ring(void) { return PyModule_Create(&module); }
